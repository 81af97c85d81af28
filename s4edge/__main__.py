from s4edge.cli import main

main()
