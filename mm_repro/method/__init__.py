"""The method: mixing (Mixup and Manifold Mixup as tensor operations) and the losses, the only place the mix is
written."""
