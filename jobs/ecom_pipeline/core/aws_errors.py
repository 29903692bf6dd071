"""Reading an AWS error without the SDK: the code and message a botocore ``ClientError`` carries.

Pure Python (the trigger Lambda ships it): an error is read by its ``response`` attribute, so
nothing here imports botocore.
"""

from __future__ import annotations

# Codes S3 answers with for an object that is not there.
NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``""`` for anything else)."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def error_message(error: BaseException) -> str:
    """The AWS error message of a botocore ``ClientError`` (``""`` for anything else)."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Message", ""))
