"""Where nodes run: `docker` (local, default) or `ssh` (VMs from an Ansible-format inventory)."""
