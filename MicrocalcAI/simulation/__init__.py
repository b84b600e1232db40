"""The mammogram simulator: breasts (procedural or real backgrounds), calcification clusters by
BI-RADS morphology and distribution, hard negatives, the imaging chain, and dataset writers."""
