"""vitcodec.edge"""
