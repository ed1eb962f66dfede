"""ftui user interface: the `ftui` command and its views."""
