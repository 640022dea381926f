"""vitcodec.codec"""
