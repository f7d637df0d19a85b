from segexport.cli import main

main()
