-- Where the server listens for Unix-socket connections.
SHOW unix_socket_directories;
