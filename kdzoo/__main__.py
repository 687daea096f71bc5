from kdzoo.cli import main

main()
