"""From detections to findings: lesions with their specks and sizes, then image, breast and exam risk."""
