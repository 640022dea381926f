"""vitcodec.protos"""
