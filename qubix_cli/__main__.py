from qubix_cli.cli import main

main()
