from client._main import main

main()
