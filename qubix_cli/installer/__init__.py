"""Installers: the packed worker and the scripts around it."""
