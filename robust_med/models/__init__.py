"""Flax models of the heads: U-Nets, a ResNet classifier, a YOLO-style detector, and their convolution."""
