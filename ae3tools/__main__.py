from ae3tools.cli import main

main()
