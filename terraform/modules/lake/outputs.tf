output "bucket_name" {
  description = "Name of the lake bucket."
  value       = aws_s3_bucket.lake.bucket
}

output "bucket_arn" {
  description = "ARN of the lake bucket."
  value       = aws_s3_bucket.lake.arn
}

output "kms_key_arn" {
  description = "ARN of the KMS key that encrypts the lake."
  value       = aws_kms_key.lake.arn
}

output "lake_url" {
  description = "RIVERLAKE_LAKE_URL for this bucket."
  value       = "s3://${aws_s3_bucket.lake.bucket}/lake"
}
