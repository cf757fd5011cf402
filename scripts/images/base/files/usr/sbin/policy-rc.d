#!/bin/sh
# Packages installed while building a test image must not start services.
exit 101
