"""What every command shares to talk to a person or a script: :mod:`.render`."""
