"""Pure functions shared by the Ansible modules in library/ and the servekit CLI."""
