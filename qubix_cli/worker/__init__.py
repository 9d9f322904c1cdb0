"""The Qubix worker agent: standard library only (psutil optional), Python 3.8+.

The same package runs as `qubix worker ...` and stand-alone as the `qubix_worker.pyz`
zipapp that the installers ship.
"""

AGENT_VERSION = "0.1.0"
