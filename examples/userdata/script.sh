#!/bin/sh
# A plain user-data script: cloud-init runs it once, late in the first boot. seedtool
# wraps it unchanged as the first part of a MIME message whose second part is the
# seed, which cloud-init's seed_random and seedtool's module read early in that boot.
set -eu
echo "first boot of $(hostname)" > /var/tmp/first-boot.txt
