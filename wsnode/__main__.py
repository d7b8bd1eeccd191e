from wsnode.cli import main

main()
