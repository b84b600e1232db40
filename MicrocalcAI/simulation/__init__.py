"""Simulated training data: calcification clusters inserted into mammograms, written as DICOM + COCO.

No labelled calcification data ships with MicrocalcAI, so the first default model learns from
simulation. This package makes that simulation physically sensible and reproducible:

* Backgrounds are either **procedural breasts** (a compressed-breast outline whose thickness falls
  off towards the skin as a half-circle of the compression height, a skin shell, a pectoral muscle
  on MLO views, and parenchyma from a 1/f^beta power-law field with beta ~ 3, the exponent
  measured for mammographic anatomical noise by Burgess et al., Med. Phys. 28:419, 2001, and
  Heine & Velthuizen, Med. Phys. 29:647, 2002), or **crops of real CBIS-DDSM film mammograms**
  (package ``mammograms``; pixel spacing unknown, taken as 0.05 mm/pixel, the DDSM digitiser range
  of 0.042-0.05 mm; Heath et al., IWDM 2000; Lee et al., Sci. Data 4:170177, 2017).
* Everything is composed in the **attenuation (log) domain**: the image value is the line
  integral of linear attenuation (``A = sum mu * t``, in nats). Tissue coefficients at ~20 keV
  follow Johns & Yaffe, Phys. Med. Biol. 32:675, 1987 (fat 0.046/mm, fibroglandular 0.080/mm);
  a calcification adds ``mu_calc * thickness``. Pure hydroxyapatite is ~2.5-3/mm at 20 keV;
  biological calcifications are less dense and scatter plus a polyenergetic beam lower the
  effective contrast, so the effective coefficient is sampled lower (1.2-2.6/mm, configurable).
  Calcification thickness is rendered analytically (ellipsoids, capsules, shells) on a fine
  sub-pixel grid and area-averaged onto the detector pixels, then blurred by a Gaussian detector
  PSF; quantum noise (standard deviation growing as exp(A/2), i.e. 1/sqrt(photons)) is added and
  the result is quantised to 12 or 16 bits. Bright = attenuating (MONOCHROME2); MONOCHROME1 files
  store the inverted values.
* Cluster morphology follows the ACR BI-RADS Atlas, 5th ed. (2013), calcification section and
  Sickles, Radiology 160:289, 1986 / Le Gal et al., Radiology 1984: microcalcifications are
  ~0.1-1 mm; a cluster (grouped) is >= 3-5 calcifications within ~1 cm^3 (BI-RADS: "at least 5
  within 1 cm" historically, "grouped" = within 2 cm in the 5th edition). Malignant-like: 5-30
  fine pleomorphic or fine-linear/branching specks of 0.1-0.5 mm width, tightly grouped (3-15 mm)
  or in a linear/segmental (ductal) arrangement, moderate contrast. Benign-like: 3-12 punctate,
  round or coarse smooth specks of 0.3-1.5 mm (a few larger popcorn- or rim-like), more dispersed
  (5-20 mm), similar or higher contrast.

Realistic mode (all off by default, so default output is byte-identical to the basic simulator;
``SimulationConfig.realistic(**overrides)`` turns everything on):

* ``morphology_set="birads"``: every BI-RADS 5th-ed. morphology in :data:`MORPHOLOGIES`
  (punctate, round, coarse/popcorn, rim/eggshell, vascular, large rod-like, dystrophic, milk of
  calcium; suspicious: amorphous, coarse heterogeneous, fine pleomorphic, fine-linear branching)
  with its distributions (grouped, linear, segmental, regional, diffuse) and cited sizes;
  ``birads_morphologies`` restricts the set. COCO annotations carry ``morphology`` and
  ``distribution``.
* ``hard_negatives_per_image``: isolated specks, skin-pore (dermal) specks, metal skin markers,
  vessel crossings, film scratches (film backgrounds) and impulse noise, never annotated;
  listed per image in COCO as ``hard_negatives`` (``type``, ``bbox``) (:func:`insert_hard_negatives`).
* ``curvilinear``: ducts, vessels and Cooper's ligaments in procedural breasts
  (:func:`curvilinear_structures`).
* ``bits_choices`` may hold 8, 12, 14 and 16 (8-bit files use BitsAllocated 8).

Each realistic feature draws from its own random stream, created only when it is enabled.

Extension points (for the realistic simulator of a later issue): :data:`CLUSTER_TYPES` maps a
``(category, distribution)`` name to a sampler that returns speck geometry in millimetres; speck
shapes are compositions of the primitives :class:`Ellipsoid`, :class:`Capsule` and :class:`Shell`,
each of which only needs a ``thickness(x, y)`` and a ``bounds()``. New morphologies, hard
negatives (e.g. vascular calcifications, skin specks) or other backgrounds plug in there.

Output of :func:`simulate_dataset`: one DICOM MG file (Digital Mammography X-Ray Image Storage -
For Presentation, RLE Lossless) per image and ``annotations.json`` in COCO format. Boxes are
COCO ``[x, y, w, h]`` in stored-pixel coordinates of the written file (x = column, origin at
the top-left pixel corner). Each annotation carries the speck mask as **uncompressed COCO RLE**
(``{"size": [h, w], "counts": [...]}``, column-major run lengths starting with a background
run, as in pycocotools), so speck segmentation can be evaluated later.

Modules, one per stage (the dataset driver calls them in this order):

    config          SimulationConfig and its presets, the records an image produces, shared constants
    anatomy         procedural breasts: outline, thickness, skin, muscle, parenchyma, ducts/vessels/ligaments
    backgrounds     real mammograms as backgrounds (crops, breast mask) and which views are held out
    geometry        calcification primitives with an analytic thickness
    calcifications  speck shapes, positions, the basic cluster types and the BI-RADS morphology table
    hard_negatives  the registry of look-alikes that are never annotated
    rendering       the imaging chain: specks on the pixel grid, blur, noise, quantisation
    writers         DICOM, PNG, COCO (speck masks as RLE) and the contact sheet
    simulate        simulate_image and simulate_dataset, the driver
"""
