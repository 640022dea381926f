"""vitcodec.cloud"""
