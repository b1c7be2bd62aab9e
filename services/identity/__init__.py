"""Identity: resolves every identifier of a person to one OneID and records every merge."""
