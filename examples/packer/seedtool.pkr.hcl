# A Debian 12 base image for AWS and Google Cloud with seedtool's guest side baked in
# and nothing left that two VMs from it could share (SSH host keys, machine id,
# random seeds, cloud-init state).
#
#   packer init .
#   packer build -var gcp_project=my-project -var trusted_key=seedtool.pub .
#
# Only the *public* key goes into the image. The signing key stays on the host that
# makes seeds (`seedtool userdata`, `seedtool launch`); `seedtool bake --check` fails
# the build if a private key is found in the image.

variable "trusted_key" {
  type        = string
  description = "Public key file made by `seedtool keygen` (the .pub); VMs credit only seeds it signed."
  default     = "seedtool.pub"
}

variable "seedtool_requirement" {
  type        = string
  description = "What pip installs on the build VM: a version, a wheel URL or a VCS URL."
  default     = "seedtool"
}

variable "aws_region" {
  type    = string
  default = "eu-west-1"
}

variable "gcp_project" {
  type        = string
  description = "Google Cloud project to build the image in."
  default     = "my-project"
}

variable "gcp_zone" {
  type    = string
  default = "europe-west1-b"
}

locals {
  stamp = formatdate("YYYYMMDDhhmmss", timestamp())
  name  = "debian-12-seedtool-${local.stamp}"
}

source "amazon-ebs" "debian" {
  region        = var.aws_region
  instance_type = "t3.small"
  ssh_username  = "admin"
  ami_name      = local.name
  source_ami_filter {
    # Debian's own account publishes the official AMIs
    owners      = ["136693071363"]
    most_recent = true
    filters = {
      name                = "debian-12-amd64-*"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
  }
  # user-data is readable by anything that reaches the metadata service: IMDSv2 only
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }
  imds_support = "v2.0"
  tags = {
    Name     = local.name
    seedtool = "baked"
  }
}

source "googlecompute" "debian" {
  project_id              = var.gcp_project
  zone                    = var.gcp_zone
  machine_type            = "e2-small"
  source_image_family     = "debian-12"
  source_image_project_id = ["debian-cloud"]
  ssh_username            = "packer"
  image_name              = local.name
  image_family            = "debian-12-seedtool"
}

build {
  sources = ["source.amazon-ebs.debian", "source.googlecompute.debian"]

  provisioner "file" {
    source      = var.trusted_key
    destination = "/tmp/seedtool-trusted.pub"
  }

  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} sh -eu {{ .Path }}"
    inline = [
      # let the build VM's own first boot finish before its state is removed
      "cloud-init status --wait >/dev/null || true",
      "apt-get update",
      # python3-venv for the throw-away build venv; the guest itself needs only python3
      "DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv",
      # the CLI lives in a throw-away venv outside the places bake --check scans
      "python3 -m venv /usr/local/lib/seedtool-build",
      "/usr/local/lib/seedtool-build/bin/pip install --quiet '${var.seedtool_requirement}'",
      "export PATH=/usr/local/lib/seedtool-build/bin:$PATH",
      "seedtool bake --root / --trusted-key /tmp/seedtool-trusted.pub",
      "rm -rf /tmp/seedtool-trusted.pub",
      "seedtool bake --check --root /",
      "rm -rf /usr/local/lib/seedtool-build",
    ]
  }
}
