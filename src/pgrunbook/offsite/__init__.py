"""Offsite copies: S3-compatible storage and age encryption.

* ``remote``: the bucket (boto3), its errors and streams
* ``push``: ``offsite-push``: a verified backup, encrypted on the way
* ``pull``: ``offsite-pull``: download, decrypt, check sha256
* ``prune``: ``offsite-prune``: remote retention
* ``lock``: Object Lock dates (pins reach the bucket)
* ``encryption``: age (pyrage), streamed; ``encrypt`` / ``decrypt`` / ``offsite-keygen``
* ``keydrill``: ``key-drill``: the escrowed identity tried on the newest copy
"""
