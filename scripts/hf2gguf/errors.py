class ConversionError(Exception):
    """A problem with the user's input. The message names the file and says how to fix it."""

    def __init__(self, path, problem: str, fix: str | None = None):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path}: {problem}" + (f"\n  fix: {fix}" if fix else ""))
