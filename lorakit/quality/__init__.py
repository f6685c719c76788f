"""Procedural shape images and a pixel scorer that says which shape and colour an image shows."""
