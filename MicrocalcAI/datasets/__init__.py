"""Adapters that turn public mammography datasets (CBIS-DDSM, INbreast, VinDr-Mammo, mini-MIAS,
COCO) into the COCO training format."""
