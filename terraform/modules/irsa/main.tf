# IAM roles for service accounts: flow runs and their Dask pods read and write the lake;
# the apps only read it. No static keys exist anywhere; pods get short-lived
# credentials through the service account's projected token.
locals {
  roles = {
    runner = { service_account = "riverlake-runner", write = true }
    apps   = { service_account = "riverlake-apps", write = false }
  }
}

data "aws_iam_policy_document" "trust" {
  for_each = local.roles
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${each.value.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "lake" {
  for_each = local.roles
  statement {
    sid       = "ListLake"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [var.bucket_arn]
  }
  statement {
    sid = "Objects"
    actions = concat(
      ["s3:GetObject", "s3:GetObjectVersion"],
      each.value.write ? ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"] : [],
    )
    resources = ["${var.bucket_arn}/*"]
  }
  statement {
    sid       = "LakeKey"
    actions   = each.value.write ? ["kms:Decrypt", "kms:GenerateDataKey", "kms:Encrypt"] : ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role" "this" {
  for_each           = local.roles
  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.trust[each.key].json
  tags               = var.tags
}

resource "aws_iam_role_policy" "lake" {
  for_each = local.roles
  name     = "lake"
  role     = aws_iam_role.this[each.key].id
  policy   = data.aws_iam_policy_document.lake[each.key].json
}
