"""Output formats: frames of a stream serialized once per format, fanned out to its viewers."""
