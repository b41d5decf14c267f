# Plugins for `packer init` (Packer 1.7+). Kept in its own file because Packer
# 1.6 (what Debian 12 ships, with both builders built in) does not know
# `required_plugins`: `packer validate` there can check seedtool.pkr.hcl alone.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      version = ">= 1.2.0"
      source  = "github.com/hashicorp/amazon"
    }
    googlecompute = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/googlecompute"
    }
  }
}
