"""The node's configuration: the model, its validation, in-place edits, live reload, admin commands."""
