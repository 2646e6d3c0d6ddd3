from client._entry import main

main()
