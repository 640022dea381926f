"""vitcodec.models"""
