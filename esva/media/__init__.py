"""Media I/O (ffmpeg-python) and face detection/alignment."""
