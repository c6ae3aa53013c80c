"""The one exception type that means "the user asked for something we can't do": the CLI prints it as one line."""


class UserError(Exception):
    """Bad input (config value, missing data, unreadable checkpoint...): one clear line, non-zero exit."""
