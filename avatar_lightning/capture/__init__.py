"""Real capture -> capture cache: sources, landmarks, calibration, template, fitting, textures, clean plates."""
