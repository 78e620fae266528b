"""`python -m bench`: openmaker's job overhead and File-mode download speed, measured.

Everything runs against one `rclone serve s3` server started by the command itself, so the
figures compare openmaker with s5cmd on the same server and the same data.
"""
