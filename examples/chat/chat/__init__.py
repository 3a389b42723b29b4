"""The chat of the Django Channels articles, with Clarion as its realtime part."""
