from spotzee.cli import main

main()
