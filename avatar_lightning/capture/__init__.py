"""Real capture -> capture cache: sources, ingest, landmarks, calibration (a file or bundle adjustment), template,
tracking, textures, clean plates."""
