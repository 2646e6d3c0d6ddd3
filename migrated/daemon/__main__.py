from migrated.daemon._main import main

main()
