# The lake bucket: versioned, SSE-KMS with a customer key that rotates, no public
# access, TLS only, access-logged, with lifecycle rules for landing and old versions.
data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "key" {
  # checkov:skip=CKV_AWS_109:A key policy's "*" resource means this key only.
  # checkov:skip=CKV_AWS_111:A key policy's "*" resource means this key only.
  # checkov:skip=CKV_AWS_356:A key policy's "*" resource means this key only.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "S3LogDelivery"
    actions   = ["kms:GenerateDataKey*", "kms:Decrypt"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "lake" {
  description             = "Riverlake lake bucket ${var.bucket_name}"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "lake" {
  name          = "alias/${var.bucket_name}"
  target_key_id = aws_kms_key.lake.key_id
}

resource "aws_s3_bucket" "lake" {
  # checkov:skip=CKV_AWS_144:Single-region lake; versioning and the Delta log are its recovery. Cross-region replication is a per-deployment decision.
  # checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; runs are scheduled by Prefect.
  bucket = var.bucket_name
  tags   = var.tags
}

locals {
  # Both buckets (the lake and its access logs) are versioned, KMS-encrypted and private.
  buckets = { lake = aws_s3_bucket.lake.id, logs = aws_s3_bucket.logs.id }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.buckets
  bucket   = each.value
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = local.buckets
  bucket   = each.value
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.lake.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each                = local.buckets
  bucket                  = each.value
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

data "aws_iam_policy_document" "tls_only" {
  for_each = { lake = aws_s3_bucket.lake.arn, logs = aws_s3_bucket.logs.arn }
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value, "${each.value}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "lake" {
  bucket     = aws_s3_bucket.lake.id
  policy     = data.aws_iam_policy_document.tls_only["lake"].json
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# Lifecycle rules never act on objects under lake/tables/: S3 knows nothing of Delta, and
# expiring a table's _delta_log or a data file its log names corrupts the table. Old
# quarantine rows leave through Delta (`riverlake prune-quarantine --older-than-days N`: a
# delete, then a vacuum). landing/ holds plain files (the landed batches, read again when
# a month is reprocessed): tiered, never expired. Noncurrent versions (what vacuum
# deleted, in this versioned bucket) and incomplete uploads expire everywhere.
resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id

  rule {
    id     = "landing-tiering"
    status = "Enabled"
    filter {
      prefix = "lake/landing/"
    }
    transition {
      days          = var.landing_to_ia_days
      storage_class = "STANDARD_IA"
    }
    transition {
      days          = var.landing_to_glacier_days
      storage_class = "GLACIER_IR"
    }
  }

  rule {
    id     = "noncurrent-and-incomplete"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_expiry_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# Access logs go to a bucket of their own (which cannot log to itself).
resource "aws_s3_bucket" "logs" {
  # checkov:skip=CKV_AWS_18:This is the access-log target; logging it would loop.
  # checkov:skip=CKV_AWS_144:Access logs are not replicated.
  # checkov:skip=CKV2_AWS_62:Nothing consumes access-log events.
  bucket = "${var.bucket_name}-access-logs"
  tags   = var.tags
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  bucket = aws_s3_bucket.logs.id
  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.access_log_retention_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 7
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

resource "aws_s3_bucket_logging" "lake" {
  bucket        = aws_s3_bucket.lake.id
  target_bucket = aws_s3_bucket.logs.id
  target_prefix = "s3/${var.bucket_name}/"
}

data "aws_iam_policy_document" "logs" {
  source_policy_documents = [data.aws_iam_policy_document.tls_only["logs"].json]
  statement {
    sid       = "S3ServerAccessLogs"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.logs.arn}/s3/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.lake.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  bucket     = aws_s3_bucket.logs.id
  policy     = data.aws_iam_policy_document.logs.json
  depends_on = [aws_s3_bucket_public_access_block.this]
}
