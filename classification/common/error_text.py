"""The one line a user reads for an error that stops a tool (every rank's own line, and the line other ranks quote)."""


def describe_error(err: BaseException) -> str:
    """`err` in one line: an OSError as its reason and file (`Is a directory: out/run/args.yaml`, a file standing
    where a folder is needed named as such), a DataLoader worker's re-raised error as its last line (`Type: message`),
    anything else as its text."""
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename:   # os.makedirs met a file
            where += " (a file stands where the path needs a folder)"
        return f"{err.strerror}{where}"
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        # re-raised by a DataLoader worker with its traceback: the last line is `module.Type: message`
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text
