"""Sync: keep a session's files on the Pi (snapshots pulled with rsync while the VM lives)
and put them back into every new VM before its shell starts."""
