from ae3tools.entry import main

main()
