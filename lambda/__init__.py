"""The S3-triggered Lambda (`trigger.handler`).

The folder is installed as ecom_pipeline.lambda_fn so run-local calls the same handler.
"""  # noqa: N999 - deployed as a zip, never imported as `lambda`
