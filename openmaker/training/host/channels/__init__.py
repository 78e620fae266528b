"""A host's input channels: File (downloaded), FastFile (mounted), Pipe (streamed into FIFOs)."""
