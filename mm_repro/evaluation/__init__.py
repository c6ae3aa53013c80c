"""The evaluation of one finished run (`evaluate`): attacks, deformations, calibration, k-NN and flattening
(evaluate), the measures themselves as tensor functions (measures), and its printed summary and figures (report)."""
