//! What leak cleanup finds besides instances: detached volumes, dedicated hosts, uploaded
//! images (AMIs) and snapshots, tagged for this provider and installation; and how each goes.

use aws_sdk_ec2::types::{Filter, Tag};
use nodepool_driver::{CloudError, LeakedResource, Owner, ResourceKind, cloud::CloudResult, tags};

use crate::{AwsCloud, classify, tag_of};

impl AwsCloud {
    /// Detached volumes, dedicated hosts, and uploaded images (AMIs) and snapshots, tagged for
    /// this provider and installation.
    pub(crate) async fn tagged_resources(&self) -> CloudResult<Vec<LeakedResource>> {
        let owner_of = |resource_tags: &[Tag]| {
            let node = tag_of(resource_tags, tags::NODE_ID).cloned().map(Owner::Node);
            node.or_else(|| tag_of(resource_tags, tags::IMAGE).cloned().map(Owner::Image))
        };
        let mut resources = Vec::new();
        let mut filters = self.ownership_filters();
        filters.push(Filter::builder().name("status").values("available").build());
        let mut pages = self.client.describe_volumes().set_filters(Some(filters)).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("DescribeVolumes", e))?;
            for volume in page.volumes() {
                resources.push(LeakedResource {
                    kind: ResourceKind::Volume,
                    id: volume.volume_id().unwrap_or_default().to_owned(),
                    owner: owner_of(volume.tags()),
                });
            }
        }
        for host in self.our_hosts().await? {
            resources.push(LeakedResource {
                kind: ResourceKind::DedicatedHost,
                id: host.host_id().unwrap_or_default().to_owned(),
                owner: owner_of(host.tags()),
            });
        }
        let images = self
            .client
            .describe_images()
            .owners("self")
            .set_filters(Some(self.ownership_filters()))
            .send()
            .await
            .map_err(|e| classify("DescribeImages", e))?;
        for image in images.images() {
            resources.push(LeakedResource {
                kind: ResourceKind::Image,
                id: image.image_id().unwrap_or_default().to_owned(),
                owner: owner_of(image.tags()),
            });
        }
        let mut pages = self
            .client
            .describe_snapshots()
            .owner_ids("self")
            .set_filters(Some(self.ownership_filters()))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("DescribeSnapshots", e))?;
            for snapshot in page.snapshots() {
                resources.push(LeakedResource {
                    kind: ResourceKind::Snapshot,
                    id: snapshot.snapshot_id().unwrap_or_default().to_owned(),
                    owner: owner_of(snapshot.tags()),
                });
            }
        }
        Ok(resources)
    }

    /// Deletes one resource [`AwsCloud::tagged_resources`] found.
    pub(crate) async fn delete_tagged(&self, resource: &LeakedResource) -> CloudResult<()> {
        match resource.kind {
            ResourceKind::Volume => {
                self.client
                    .delete_volume()
                    .volume_id(&resource.id)
                    .send()
                    .await
                    .map_err(|e| classify("DeleteVolume", e))?;
                Ok(())
            }
            ResourceKind::DedicatedHost => {
                let output = self
                    .client
                    .release_hosts()
                    .host_ids(&resource.id)
                    .send()
                    .await
                    .map_err(|e| classify("ReleaseHosts", e))?;
                if let Some(refused) = output.unsuccessful().first() {
                    let why = refused.error().and_then(|e| e.message()).unwrap_or("refused");
                    return Err(CloudError::api("ReleaseHosts", why));
                }
                Ok(())
            }
            ResourceKind::Image => {
                self.client
                    .deregister_image()
                    .image_id(&resource.id)
                    .send()
                    .await
                    .map_err(|e| classify("DeregisterImage", e))?;
                Ok(())
            }
            // A snapshot still behind an image is refused (`InvalidSnapshot.InUse`) and tried
            // again on the next pass, after the image is gone.
            ResourceKind::Snapshot => {
                self.client
                    .delete_snapshot()
                    .snapshot_id(&resource.id)
                    .send()
                    .await
                    .map_err(|e| classify("DeleteSnapshot", e))?;
                Ok(())
            }
            kind => Err(CloudError::Invalid(format!("cannot delete a {kind}"))),
        }
    }
}
